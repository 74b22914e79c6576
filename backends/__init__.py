"""Inference backends: each turns a rendered prompt into raw text chunks."""
