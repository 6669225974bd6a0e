"""The moral direction (Schramowski et al., Nature Machine Intelligence 2022; code: ml-research/MoRT_NMI).

Sentence embeddings of 64 atomic actions ("smile", "kill", ...), each averaged over 10 question
templates ("Should I kill?"), have a first principal component that orders the actions from "don't" to
"do". Projecting a new phrase on it scores how acceptable the encoder takes the action to be:

    direction = MoralDirection.fit(encoder, tokenizer)          # PCA on the 64 verbs; PC1, sign fixed
    direction.score(encoder, tokenizer, ["kill time", "kill people"])   # ~[-1, 1], higher = more "do"
    direction.save("runs/moral", encoder); MoralDirection.load("runs/moral", encoder)

Sign (the paper's code): cluster the verbs' PCA coordinates into two groups (agglomerative, Ward); the
group without "kill" is the positive one, and PC1 is flipped so its mean is > 0 (`sign_rule="cluster"`).
`sign_rule="labels"` instead flips PC1 so the 24 known positive verbs score above the 24 negative ones.
Scores are divided by the largest |PC1| over the fitting verbs (the code hard-codes that constant per
encoder), so the fitted verbs span [-1, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from petkit.analysis.embed import checked_texts, check_layer, sentence_embeddings
from petkit.analysis.stored import encoder_fingerprint, load_artefact, model_mismatch, save_artefact
from petkit.core.errors import BaseModelMismatch, ConfigError, MissingExtra

# MoRT/mort/dataMoral.py: experimental_quests_paper
TEMPLATES = ("Is it ok to {}?", "Should I {}?", "Shall I {}?", "May I {}?", "Is it allowed to {}?",
             "Is it recommended to {}?", "Is it desired to {}?", "Is it polite to {}?", "Is it good behaviour to {}?",
             "Is it exemplary to {}?")
# MoRT/mort/dataMoral.py: actions_verbs_projection (24 positive, 24 negative, 16 neutral-ish)
POSITIVE = ("smile", "cheer", "relax", "celebrate", "hug", "greet", "cuddle", "enjoy", "volunteer", "love", "cherish",
            "welcome", "clap", "appreciate", "congratulate", "treasure", "charm", "comfort", "inspire", "admire",
            "compliment", "thank", "dream", "care")
NEGATIVE = ("harm", "damage", "slander", "destroy", "brutalise", "poison", "murder", "misinform", "kill", "rape",
            "assault", "victimise", "bully", "pollute", "misreport", "illegalize", "blame", "misadvise", "destruct",
            "misdirect", "slaughter", "attack", "torture", "traumatize")
NEUTRAL = ("eat", "travel", "steal", "pursue", "waste", "drink", "help", "become", "be", "have", "talk", "lie",
           "apologize", "marry", "go", "divorce")
VERBS = POSITIVE + NEGATIVE + NEUTRAL
SIGN_RULES = ("cluster", "labels")
ANCHOR = "kill"  # the paper's code: the cluster without this verb is the positive one
KIND = "moral_direction"


def _sklearn():
    try:
        from sklearn.cluster import AgglomerativeClustering
        from sklearn.decomposition import PCA
    except ImportError:
        raise MissingExtra("the moral direction needs scikit-learn: pip install 'petkit[analysis]'") from None
    return PCA, AgglomerativeClustering


def template_embeddings(model: nn.Module, tokenizer, phrases: Sequence[str], *, templates: Sequence[str] = TEMPLATES,
                        layer: int | None = None, normalize: bool = True) -> torch.Tensor:
    """(N, d): each phrase's sentence embedding averaged over the question templates. `normalize` is
    all-MiniLM-L6-v2's own last step (its sentence-transformers pipeline ends in Normalize)."""
    phrases = checked_texts(phrases, "phrases")
    if not templates or any("{}" not in t for t in templates):
        raise ConfigError("every template needs one '{}' where the phrase goes, e.g. 'Should I {}?'")
    filled = [t.format(p) for p in phrases for t in templates]
    emb = sentence_embeddings(model, tokenizer, filled, layer=layer, normalize=normalize)
    return emb.view(len(phrases), len(templates), -1).mean(1)


def _sign(coords: torch.Tensor, verbs: list[str], rule: str) -> float:
    if rule == "labels":
        pos = [i for i, v in enumerate(verbs) if v in POSITIVE]
        neg = [i for i, v in enumerate(verbs) if v in NEGATIVE]
        if not pos or not neg:
            raise ConfigError("sign_rule='labels' needs known positive and negative verbs among the fitted ones")
        return 1.0 if coords[pos, 0].mean() >= coords[neg, 0].mean() else -1.0
    if ANCHOR not in verbs:
        raise ConfigError(f"sign_rule='cluster' needs {ANCHOR!r} among the verbs (its cluster is the negative one); "
                          f"add it or use sign_rule='labels'")
    _, Agglomerative = _sklearn()
    groups = Agglomerative(n_clusters=2).fit_predict(coords.numpy())
    positive = torch.as_tensor(groups != groups[verbs.index(ANCHOR)])
    return 1.0 if coords[positive, 0].mean() >= 0 else -1.0


@dataclass
class MoralDirection:
    mean: torch.Tensor          # (d,) PCA centring
    axis: torch.Tensor          # (d,) PC1, sign applied
    norm: float                 # largest |PC1| over the fitting verbs
    explained_variance: list[float]
    verbs: list[str]
    templates: list[str] = field(default_factory=lambda: list(TEMPLATES))
    layer: int | None = None
    normalize: bool = True
    model_fingerprint: dict | None = None

    @classmethod
    def from_embeddings(cls, embeddings: torch.Tensor, verbs: Sequence[str], *, sign_rule: str = "cluster",
                        n_components: int = 5, **settings) -> MoralDirection:
        verbs = list(verbs)
        if sign_rule not in SIGN_RULES:
            raise ConfigError(f"sign_rule must be one of {', '.join(SIGN_RULES)}, got {sign_rule!r}")
        if len(verbs) != len(embeddings) or len(verbs) < max(n_components, 2):
            raise ConfigError(f"need one embedding per verb and at least {max(n_components, 2)} verbs, "
                              f"got {len(embeddings)} embeddings for {len(verbs)} verbs")
        PCA, _ = _sklearn()
        pca = PCA(n_components=n_components, svd_solver="full").fit(embeddings.double().numpy())
        coords = torch.as_tensor(pca.transform(embeddings.double().numpy()))
        sign = _sign(coords, verbs, sign_rule)
        axis = sign * torch.as_tensor(pca.components_[0])
        norm = float(coords[:, 0].abs().max())
        return cls(torch.as_tensor(pca.mean_).float(), axis.float(), norm,
                   [float(v) for v in pca.explained_variance_ratio_], verbs, **settings)

    @classmethod
    def fit(cls, model: nn.Module, tokenizer, verbs: Sequence[str] = VERBS, *, templates: Sequence[str] = TEMPLATES,
            layer: int | None = None, normalize: bool = True, sign_rule: str = "cluster") -> MoralDirection:
        check_layer(model, layer)
        emb = template_embeddings(model, tokenizer, verbs, templates=templates, layer=layer, normalize=normalize)
        return cls.from_embeddings(emb, verbs, sign_rule=sign_rule, templates=list(templates), layer=layer,
                                   normalize=normalize, model_fingerprint=encoder_fingerprint(model))

    def project(self, embeddings: torch.Tensor) -> torch.Tensor:
        return (embeddings.float() - self.mean) @ self.axis / self.norm

    def score(self, model: nn.Module, tokenizer, phrases: Sequence[str], *, qa_template: bool = True) -> torch.Tensor:
        """Each phrase's moral score: with `qa_template` (the paper's default) the phrase is put into the
        question templates and their embeddings averaged, else the bare phrase is embedded."""
        phrases = checked_texts(phrases, "phrases")
        why = self.model_fingerprint and model_mismatch(self.model_fingerprint, model)
        if why:
            raise BaseModelMismatch(f"this moral direction was fitted with another model: {why}")
        if qa_template:
            emb = template_embeddings(model, tokenizer, phrases, templates=self.templates, layer=self.layer,
                                      normalize=self.normalize)
        else:
            emb = sentence_embeddings(model, tokenizer, phrases, layer=self.layer, normalize=self.normalize)
        return self.project(emb)

    def save(self, folder, model: nn.Module):
        meta = {"norm": self.norm, "explained_variance": self.explained_variance, "verbs": self.verbs,
                "templates": self.templates, "layer": self.layer, "normalize": self.normalize}
        return save_artefact(folder, KIND, {"mean": self.mean, "axis": self.axis}, meta, model)

    @classmethod
    def load(cls, folder, model: nn.Module, force: bool = False) -> MoralDirection:
        tensors, meta = load_artefact(folder, KIND, model, force=force)
        try:
            return cls(tensors["mean"], tensors["axis"], float(meta["norm"]), list(meta["explained_variance"]),
                       list(meta["verbs"]), list(meta["templates"]), meta.get("layer"), bool(meta.get("normalize", True)),
                       encoder_fingerprint(model))  # checked (or forced) above: this model is the one
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{folder} is not a complete moral direction (bad or missing {exc})") from None
