"""High-entropy oxides: curation (curate), MACE finetuning (finetune), rock-salt supercells (generate),
evaluation of potentials through the batched relaxer (evaluate) and its report (report)."""
