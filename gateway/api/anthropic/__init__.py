"""The Anthropic Messages API (``/v1/messages``), for Claude Code and the Anthropic SDKs.

The ``WireApi`` lives in ``.wire``: this package's settings model is imported by
``gateway.settings``, so importing the package itself must not pull in the routes.
"""
