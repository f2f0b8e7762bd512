"""One module per training method, each with `train(cfg, run_dir, resume_from) -> metrics`."""
import importlib

TRAINERS = ("sft", "default", "reward", "dpo", "orpo")


def trainer_module(name: str):
    if name not in TRAINERS:
        raise NotImplementedError(f"the {name} trainer is not available yet; available: {', '.join(TRAINERS)}")
    return importlib.import_module(f"launcher.trainers.{name}")
