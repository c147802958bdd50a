"""dp-studio's web UI (Gradio only; never imports torch).

``build_app(services)`` returns the Blocks; ``app.py`` launches it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import gradio as gr

    from studio.services import Services


def build_app(services: Services) -> gr.Blocks:
    """Build the whole studio page (imports Gradio on first use)."""
    from studio.layout import build_app as _build

    return _build(services)
