"""High-entropy oxides: structure generation (and, later, curation, finetuning and evaluation)."""
