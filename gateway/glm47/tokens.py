"""GLM-4.7's special texts. They are tokens in the model's vocabulary and text everywhere else."""

from __future__ import annotations

PROMPT_PREFIX = "[gMASK]<sop>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
OBSERVATION = "<|observation|>"
END_OF_TEXT = "<|endoftext|>"

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
ARG_KEY_OPEN = "<arg_key>"
ARG_KEY_CLOSE = "</arg_key>"
ARG_VALUE_OPEN = "<arg_value>"
ARG_VALUE_CLOSE = "</arg_value>"
TOOL_RESPONSE_OPEN = "<tool_response>"
TOOL_RESPONSE_CLOSE = "</tool_response>"

# Generation ends at any of these; they never appear in returned text.
STOP_TOKENS: tuple[str, ...] = (USER, OBSERVATION, END_OF_TEXT)

CONTEXT_LENGTH = 202_752
