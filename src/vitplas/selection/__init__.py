"""Choosing what to finetune: criteria scored on a model and its target data, budgeted choice
(vitplas.selection.criteria, .budget), `vitplas select` (.select) and train=[auto] (.auto)."""
