"""Online RL (grpo, rloo): reward functions, reward models and tools named in the configuration."""
