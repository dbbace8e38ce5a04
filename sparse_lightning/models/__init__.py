"""Model factories; any ``torch.nn.Module`` factory works as a ``model`` config ``_target_``."""
