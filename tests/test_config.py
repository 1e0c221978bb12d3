import json

import pytest

from jet_jax_configs.presets import JET_NEMOTRON_2B, JET_NEMOTRON_4B, PRESETS, get_preset
from jet_jax.config import JetBlockConfig, ModelConfig, count_params


def test_hf_json_round_trip_for_every_preset():
    for name, cfg in PRESETS.items():
        assert ModelConfig.from_hf_dict(json.loads(json.dumps(cfg.to_hf_dict()))) == cfg, name


def test_released_2b_config_parsing_traps():
    """norm_eps as a string and expand_v = 2.6666666667 must still give dv = 256."""
    d = JET_NEMOTRON_2B.to_hf_dict()
    d["efficient_attention_config"]["jet"]["norm_eps"] = "1e-5"
    d["efficient_attention_config"]["jet"]["expand_v"] = 2.6666666667
    cfg = ModelConfig.from_hf_dict(d)
    assert cfg.jet.norm_eps == 1e-5 and cfg.jet.head_v_dim == 256
    assert cfg.layer_types[14] == cfg.layer_types[19] == "attn"
    assert cfg.layer_types[20] == cfg.layer_types[21] == "swa" and cfg.window_size == 1152


def test_presets_match_reference_table():
    assert JET_NEMOTRON_4B.layer_types.count("attn") == 3
    assert [i for i, t in enumerate(JET_NEMOTRON_4B.layer_types) if t == "swa"] == [5, 16, 19, 21, 22, 25, 27]
    assert JET_NEMOTRON_4B.jet.value_dim == 16 * 256
    assert 1.5e9 < count_params(get_preset("qwen2.5-1.5b")) < 1.6e9  # Qwen2.5-1.5B: 1.54B
    with pytest.raises(KeyError, match="unknown preset 'nope'"):
        get_preset("nope")


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_hidden_layers=2, layer_types=("attn", "mamba9")), "unknown layer type 'mamba9' at layer 1"),
    (dict(num_hidden_layers=2, layer_types=("attn",)), "layer_types has 1 entries but num_hidden_layers is 2"),
    (dict(hidden_size=50, num_attention_heads=4), "hidden_size 50 is not divisible by num_attention_heads 4"),
    (dict(num_attention_heads=6, num_key_value_heads=4, hidden_size=48),
     "num_attention_heads 6 is not divisible by num_key_value_heads 4"),
    (dict(num_hidden_layers=1, layer_types=("jet",), jet=JetBlockConfig(head_dim=96, expand_v=2.5001)),
     "is not an integer value-head width"),
])
def test_invalid_configs_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


def test_unsupported_model_type_and_missing_fields():
    d = JET_NEMOTRON_2B.to_hf_dict()
    with pytest.raises(ValueError, match="unsupported model_type 'gpt2'"):
        ModelConfig.from_hf_dict({**d, "model_type": "gpt2"})
    d.pop("efficient_attention_config")
    with pytest.raises(ValueError, match="no efficient_attention_config.jet"):
        ModelConfig.from_hf_dict(d)
