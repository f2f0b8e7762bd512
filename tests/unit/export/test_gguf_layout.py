"""The pieces of a GGUF that transformers and llama.cpp must read back the same way: the rotary row order of q/k
and the chat template."""
import jinja2
import numpy as np
import pytest
import torch
from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

from launcher.data.templates import CHATML
from launcher.export.gguf_vocab import serving_template
from launcher.export.gguf_write import permute_rotary


@pytest.mark.parametrize("n_head,n_kv_head", [(4, 4), (9, 3)])
def test_transformers_gguf_loader_undoes_the_rotary_permutation(n_head, n_kv_head):
    head_dim, hidden = 8, 16
    processor = LlamaTensorProcessor(config={"num_attention_heads": n_head, "num_key_value_heads": n_kv_head})
    q = torch.randn(n_head * head_dim, hidden)
    k = torch.randn(n_kv_head * head_dim, hidden)
    written_q, written_k = permute_rotary(q, n_head), permute_rotary(k, n_kv_head)
    assert not torch.equal(written_q, q)  # the layout really changes
    back_q = processor.process(written_q.numpy(), "blk.0.attn_q.weight").weights
    back_k = processor.process(written_k.numpy(), "blk.0.attn_k.weight").weights
    np.testing.assert_array_equal(back_q, q.numpy())
    np.testing.assert_array_equal(back_k, k.numpy())


def test_the_served_template_renders_what_the_training_template_renders():
    assert "{% generation %}" in CHATML
    served = serving_template(CHATML)
    assert "generation %}" not in served
    env = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = lambda message: (_ for _ in ()).throw(ValueError(message))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]
    for prompt in (True, False):
        variables = dict(messages=messages, add_generation_prompt=prompt, eos_token="</s>", bos_token="<s>")
        assert env.from_string(served).render(**variables) == env.from_string(
            CHATML.replace("{% generation %}", "").replace("{% endgeneration %}", "")).render(**variables)


def test_llama3_rope_factors_are_the_divisors_transformers_applies():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from launcher.export.gguf_write import llama3_rope_factors

    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64, "rope_theta": 10000.0}
    config = LlamaConfig(hidden_size=128, num_attention_heads=4, rope_parameters=rope)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    unscaled = 1.0 / (10000.0 ** (torch.arange(0, 32, 2, dtype=torch.float32) / 32))
    factors = llama3_rope_factors(config.to_dict())
    assert factors.min() == 1.0 and factors.max() == 8.0  # this shape has unscaled, smoothed and scaled dimensions
    torch.testing.assert_close(factors, unscaled / scaled)
