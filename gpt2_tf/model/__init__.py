"""GPT-2 itself: config, layers, backbone and heads, LoRA, weight import/export, generation, and
the losses training and evaluation share. The speed paths sit beside the plain ones."""
