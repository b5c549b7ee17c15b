"""The two locks: the stack-owner lock that keeps deploys away from long exports (`stack_owner.py`,
file-compatible with stack_owner.sh) and the operation lock, one change to a host's stack at a time
(`operation.py`).

May import `stackfile` and the base modules.
"""
