"""d2it-core's built-in components: the attention backends."""

from d2it.attention import auto_attention, make_xformers, math_attention, sdpa_attention
from d2it.hookspecs import hookimpl
from d2it.spec import ComponentSpec


@hookimpl
def d2it_attention():
    """The attention backends."""
    return [
        ComponentSpec(
            "auto",
            "attention",
            lambda c: auto_attention,
            summary="xformers on CUDA fp16/bf16 when installed, else sdpa",
        ),
        ComponentSpec("sdpa", "attention", lambda c: sdpa_attention, summary="torch scaled_dot_product_attention"),
        ComponentSpec("math", "attention", lambda c: math_attention, summary="explicit softmax(QK^T)V reference"),
        ComponentSpec(
            "xformers", "attention", make_xformers, summary="xformers memory-efficient attention (CUDA, fp16/bf16)"
        ),
    ]
