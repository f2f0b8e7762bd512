"""An example reward function for trainer=grpo / rloo: `trainer.rewards=[format,examples/rewards.py:brevity]`."""


def brevity(completions, **kwargs) -> list[float]:
    """Shorter completions score higher: 1.0 for an empty one, falling towards 0.0 as it grows (0.5 at 200
    characters). trl also passes prompts, completion_ids and every data column as keyword arguments; **kwargs
    takes the ones this function does not read. A completion is a string, or a list of messages for chat prompts."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [200 / (200 + len(text)) for text in texts]
