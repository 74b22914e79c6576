"""HTTP routes. Each reads what it needs from ``request.app.state``."""
