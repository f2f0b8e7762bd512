"""The values of peft.init: the ones offered, and peft's others with why each is not (pure data: `plan`
validates against it without importing torch or peft)."""

# peft.init -> peft's init_lora_weights. Only initialisations that leave the base weights untouched and need
# nothing but the model are offered: the saved adapter then applies to the published base, and merging it gives
# exactly the adapter's outputs (tests/integration/test_adapter_variants.py).
LORA_INITS = {"default": True, "gaussian": "gaussian", "orthogonal": "orthogonal"}
# peft's other initialisations, and why each is not offered (`plan` quotes the reason).
_RESIDUAL = ("rewrites the base weights to a residual at init, so the saved adapter is only valid on that residual "
             "until peft converts it at save time (path_initial_model_for_weight_conversion, from an adapter saved "
             "before step 0), which tunelaunch does not do")
LORA_INITS_NOT_OFFERED = {
    "pissa": _RESIDUAL, "pissa_niter_<n>": _RESIDUAL, "olora": _RESIDUAL, "corda": _RESIDUAL, "lora_ga": _RESIDUAL,
    "loftq": "quantizes the base itself from a loftq_config (a separate preprocessing step in peft)",
    "eva": "needs a pass over the data before training (peft's initialize_lora_eva_weights)",
    "mica": "freezes B and trains only A: a different method rather than an initialisation",
    "false": "a random non-zero start, meant for debugging",
}
