"""The steps of one iteration (DESIGN §2), one module per group:

    mine.py      baseline, mine
    teach.py     teach, verify, agree (the teachers' part)
    version.py   version (the dataset of iteration k)
    train.py     train
    evaluate.py  evaluate
    common.py    what several steps share (answering, scoring)
    context.py   StepContext (what a step reads), StepResult (what it writes)

Every step follows the same shape so that it is idempotent and resumable:
compute (generation, teacher calls, training: slow, outside any transaction),
then return everything it produced; the orchestrator writes it *and*
`finish_step` in one store transaction (Orchestrator.commit_step).  A crash
before that transaction leaves no trace of the step; a crash after it leaves
the step done.  What later steps need is read back from the store
(predictions, rationales) or from the step's `info` JSON, never from memory,
so a restarted process continues at the first unfinished step with the same
inputs.

The order the steps run in is STEP_ORDER (the orchestrator runs them in it;
the summaries show timings in it).
"""

STEP_ORDER = ("baseline", "mine", "teach", "verify", "agree", "version", "train", "evaluate", "commit")
