"""Knowledge distillation: logits (KL at a temperature plus the task loss) or embeddings (MSE/cosine)."""
