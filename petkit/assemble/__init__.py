"""Deep Model Assembling (Ni et al. 2022): train a deep model from scratch by dividing it into K modules,
incubating each inside a small trained meta model (independent jobs), then assembling and fine-tuning."""

from .config import AssembleConfig, build_model, meta_model, target_model
from .incubate import budget, freeze_all_but, incubate, incubation_model, step_cost
from .modules import Split, assemble, hybrid, load_module_state, module_state, split_model
from .run import prepare, run_assemble, run_e2e, run_incubate, run_meta, train_phase
from .storage import load_module, save_module

__all__ = ["AssembleConfig", "Split", "assemble", "budget", "build_model", "freeze_all_but", "hybrid", "incubate",
           "incubation_model", "load_module", "load_module_state", "meta_model", "module_state", "prepare",
           "run_assemble", "run_e2e", "run_incubate", "run_meta", "save_module", "split_model", "step_cost",
           "target_model", "train_phase"]
