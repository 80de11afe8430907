"""Queue connections behind one contract, and `dispatch` for job instances built by hand."""
from core.dispatch import dispatch, dispatch_many
from core.errors import QueueConnectionError

__all__ = ["QueueConnectionError", "dispatch", "dispatch_many"]
