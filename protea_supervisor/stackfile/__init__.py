"""The stack description: the records a stack file becomes (`stack.py`), every key with its type, default and
bounds (`schema.py`), the parser that layers the shipped defaults and host files into a Stack (`parser.py`,
`parse_checks.py`, `parse_programs.py`, `placeholders.py`, `carry.py`), a host's role (`host.py`), env files
(`env.py`), the counts chosen at run time (`overrides.py`), and loading and atomic writing of files
(`files.py`).

The bottom wing: it imports only the package's base modules (`errors`, `humane`, `progress`).
"""
