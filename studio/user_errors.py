"""Expected user mistakes (a wrong confirmation, a refused path) shown as a Gradio error toast.

Gradio prints a full traceback for every ``gr.Error`` unless told not to; for a mistake the user can fix, the
server log gets one line naming it instead.
"""

from __future__ import annotations

import logging

import gradio as gr

log = logging.getLogger("studio")


def user_mistake(message: str) -> gr.Error:
    """The toast for ``message``, logged as one line (no traceback: nothing in the code went wrong)."""
    log.info("refused: %s", message.replace("\n", " "))
    return gr.Error(message, print_exception=False)
