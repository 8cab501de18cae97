"""workbench: what does this model actually see at this layer?

Attributes are imported lazily, so ``import workbench as wb`` is cheap and changes no global state.
"""
import importlib as _importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # foundation
    "Classifier": "models", "load_classifier": "models", "preprocess": "models", "load_image": "models",
    "WeightsUnavailableError": "errors", "WorkbenchError": "errors",
    "layer_table": "layers", "capture": "hooks", "run_with_cache": "hooks", "run_with_hooks": "hooks",
    "FeatureCache": "hooks", "extract_features": "hooks",
    "ablate_channels": "hook_factories", "add_direction": "hook_factories",
    # tiny world
    "TinyWorld": "tinyworld",
    # diffusion and inversion
    "DiffusionBase": "diffusion",
    "FeatInv": "inverters.featinv", "FeatureConditioning": "inverters.featinv",
    "invariance_map": "inverters.featinv",
    "load_inverter": "inverters", "list_inverters": "inverters",
    "InverterBase": "inverters.base", "register_inverter": "inverters.base", "Sampler": "inverters.sampler",
    "train_featinv": "training.featinv",
    "presets": "presets",
    # evaluation
    "evaluate": "evaluation", "OptimizationInverter": "inverters.optimization",
    "RetrievalInverter": "inverters.retrieval",
    # judges that no method touches
    "load_judges": "judges", "load_factor_reader": "factor_reader",
    "DecoderInverter": "inverters.decoder",
    "data_dir": "paths", "fast_mode": "paths",
    # interactive
    "Explorer": "widgets",
}

_SUBMODULES = {"tinyworld", "hooks", "models", "zoo", "weights", "diffusion", "inverters", "training", "plot", "metrics",
               "analysis", "evaluation", "presets", "paths", "errors", "cli", "robustness", "widgets", "interventions",
               "judges", "factor_reader", "claims"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = _importlib.import_module(f".{_EXPORTS[name]}", __name__)
        value = module if name == "presets" else getattr(module, name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return _importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")


def __dir__():
    """The public names (exports, submodules, ``__version__``) and the module's dunders; no helpers."""
    return sorted({n for n in globals() if n.startswith("__")} | set(_EXPORTS) | _SUBMODULES)
