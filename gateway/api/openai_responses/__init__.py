"""The OpenAI Responses API (``/v1/responses``), the API Codex CLI speaks.

The package's ``__init__`` stays empty so that ``gateway.settings`` can import this API's
settings model without pulling in its routes; the ``WireApi`` lives in ``api``.
"""
