"""Sharing trained prompts with other toolkits (`pt-export`).

- `peft_format`: Hugging Face PEFT prompt-tuning adapters, read and written (a leaf module: the
  prompt files, the server and the exporter all use it).
- `exporter`: a prompt file or a run's prompt as adapter folder(s); `model_card`: their README.md.
"""
