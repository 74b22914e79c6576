"""The protocol-neutral request pipeline every wire API sits on.

A wire API (``gateway/api/<wire>/``) translates its request into a ``ChatInput``;
``build_plan`` resolves the model, route and sampling and renders the GLM-4.7 prompt into a
``Plan``; a ``Run`` drives the backend and yields parser events; ``serve_stream`` owns the
streaming choreography. None of them knows any wire format.
"""
