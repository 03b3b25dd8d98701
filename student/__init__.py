"""The student: model loading with LoRA adapters, UniSD losses, self-teacher + EMA,
trainer, generation and scoring.

Deliberately import-light: `import student` (and `prompts.answers`,
`student.errors`) never imports torch, because the teachers package uses the
answer extractor and must stay torch-free.  Import the heavy modules directly:
`from student.model import load_student`, `from student.generate import generate`.
"""
