"""Sharing trained prompts with other toolkits (`pt-export`).

- Hugging Face PEFT prompt-tuning adapters are read and written by `prompts.peft_format`
  (a leaf module: the prompt files, the server and the exporter all use it).
- `exporter`: a prompt file or a run's prompt as adapter folder(s); `model_card`: their README.md.
- `prompt_io`: a run's prompt as `.npy`, and a `.npy` prompt as a new run (`tools/prompt_io.py`).
"""
