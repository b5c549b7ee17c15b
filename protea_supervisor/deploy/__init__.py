"""Deploys: the pure plan of a tick (`plan.py`: the decision, the steps with their failure class and undo, the
blame), the executor that runs them (`executor.py`), the server's tick (`tick.py`, with `tickenv.py`) and a
node's follow (`follow.py`), what each step does to the running stack (`rollout.py`), the API switch
(`apiswitch.py`), the worktree (`worktree.py`), the frontend build (`webbuild.py`), release history
(`releases.py`) and notifications (`notify.py`).

May import `hosts`, `operations`, `supervisord`, `locks`, `stackfile` and the base modules.
"""
