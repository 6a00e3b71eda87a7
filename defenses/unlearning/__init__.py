"""Unlearning defense and unlearning-method plugins."""
