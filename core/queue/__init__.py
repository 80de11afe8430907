"""Queue connections behind one contract, and `dispatch` for job instances built by hand."""
from core.dispatch import dispatch, dispatch_many

__all__ = ["dispatch", "dispatch_many"]
