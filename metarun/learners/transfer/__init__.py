"""Transfer learning: supervised fine-tuning with a new head per episode, multi-task learning (and
its loss weightings), knowledge distillation."""
