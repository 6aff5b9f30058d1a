"""Analyses of trained runs: evaluation beside the base model, staged fine-tuning, the dictionary
project's analyses, chat-style scoring, weight differences, and the plots they draw."""
