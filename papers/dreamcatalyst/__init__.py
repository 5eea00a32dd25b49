"""DreamCatalyst score-distillation editing."""
