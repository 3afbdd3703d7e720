"""distillery: DeiT distillation experiments as a DVC pipeline."""
