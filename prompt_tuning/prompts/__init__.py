"""Prompt parameterizations: Flax modules the T5 encoder calls through the prompt hook.

Every module is called as `prompt(input_tokens [B, T], embedded_inputs [B, T, H], task_ids [B] or
None) -> [B, P, H]` (docs/DESIGN.md, "Prompt hook"). Per-layer modules (`per_layer`) also have
`layer_prompt(i, input_tokens, hidden [B, P+T, H], task_ids) -> [B, P, H]`. Modules that set
`updates_inputs` (DePT) return `(prompt [B, P, H], updated embedded_inputs [B, T, H])`.

| module             | paper                              | parameters                      |
|--------------------|------------------------------------|---------------------------------|
| `Prompt`           | Lester et al. 2021                 | P*H                             |
| `StructuredPrompt` | Liu et al. 2022 (structured PT)    | task table + hypernetwork       |
| `DecomposedPrompt` | Xiao et al. 2023 (DPT)             | H*b + b*P                       |
| `RankProbePrompt`  | DPT section 2                      | min(P, H)                       |
| `ResidualPrompt`   | Razdaibiedina et al. 2023          | P*H + 2*H*b + b + 3*H           |
| `InstancePrompt`   | Wu et al. 2022 (IDPG, M-IDPG)      | generator + task prompt(s)      |
| `AttemptPrompt`    | Asai et al. 2022 (ATTEMPT)         | P*H + 2*H*r + 2*H (k frozen sources) |
| `DeepPrompt`       | Liu et al. 2022 (P-tuning v2)      | L*P*H                           |
| `PromptBank`       | Lester et al. 2021, section 6      | N*P*H (one prompt per task id)  |
| `MultitaskPrompt`  | Wang et al. 2023 (MPT)             | P*H + N*(P+H) (P* ∘ u_k v_kᵀ)   |
| `RaggedPromptBank` | serving: C prompts of length <= P | C*P*H + C (right-aligned, masked) |
| `DecomposedInputPrompt` | Shi & Lipani 2024 (DePT)      | m*H + s*r + r*H (+ input update) |

Prompt files: `prompts.files` (`.npy`, `.npz`) and `prompts.peft_format` (Hugging Face PEFT
prompt-tuning adapter folders), read the same way everywhere a prompt file is accepted.

Initializers (`prompts.initializers`) are passed as `prompt_init` (not `init`, which would shadow
`flax.linen.Module.init`).

Logical axis names of prompt parameters. All prompt parameters are tiny next to the frozen
model, so the trainer's rules replicate every one of these names (map each to None):
- `prompt`, `prompt_embed`: rows and width of any [P, H]-like tensor.
- `prompt_layers`: the layer axis of [L, P, H] per-layer prompts.
- `prompt_tasks`, `prompt_task_dim`: the task-embedding table [num_tasks, k].
- `prompt_rank`: low-rank factors (structured low_rank r, rank probe's sigma, ATTEMPT's r,
  DePT's r).
- `prompt_positions`: input positions s of DePT's input update A [s, r].
- `prompt_hidden`: hidden units of a hypernetwork / IDPG generator (h, m).
- `prompt_bottleneck`: DPT's b and residual PT's bottleneck.
- `prompt_sentence`: IDPG's sentence-representation width D.
- `prompt_phm`, `prompt_phm_rows`, `prompt_phm_cols`: PHM rules [n, n, n];
  `prompt_flat`: the flattened P*H output of a PHM factor; `prompt_phm_in`, `prompt_phm_out`:
  the default factor axes of a stand-alone `PHMDense`.
- `prompt_bank`: the N prompts of a `PromptBank` [N, P, H] (multi-task batches, ensembles) and
  ATTEMPT's N target prompts.
"""

from prompt_tuning.prompts import initializers
from prompt_tuning.prompts.attempt import AttemptPrompt
from prompt_tuning.prompts.bank import PromptBank
from prompt_tuning.prompts.decomposed import DecomposedPrompt, RankProbePrompt, num_positive
from prompt_tuning.prompts.deep import DeepPrompt
from prompt_tuning.prompts.dept import DecomposedInputPrompt
from prompt_tuning.prompts.dept import input_length as dept_input_length
from prompt_tuning.prompts.instance import Generator, InstancePrompt
from prompt_tuning.prompts.mpt import MultitaskPrompt
from prompt_tuning.prompts.phm import PHMDense, phm_kernel
from prompt_tuning.prompts.prompt import Prompt, expand_to_batch, masked_mean
from prompt_tuning.prompts.ragged_bank import RaggedPromptBank
from prompt_tuning.prompts.residual import ResidualPrompt
from prompt_tuning.prompts.structured import StructuredPrompt

PROMPT_LOGICAL_AXES = (
    "prompt",
    "prompt_embed",
    "prompt_layers",
    "prompt_tasks",
    "prompt_task_dim",
    "prompt_rank",
    "prompt_hidden",
    "prompt_bottleneck",
    "prompt_sentence",
    "prompt_phm",
    "prompt_phm_rows",
    "prompt_phm_cols",
    "prompt_phm_in",
    "prompt_phm_out",
    "prompt_flat",
    "prompt_bank",
    "prompt_positions",
)

__all__ = [
    "PROMPT_LOGICAL_AXES",
    "AttemptPrompt",
    "DecomposedInputPrompt",
    "DecomposedPrompt",
    "DeepPrompt",
    "Generator",
    "InstancePrompt",
    "MultitaskPrompt",
    "PHMDense",
    "Prompt",
    "PromptBank",
    "RankProbePrompt",
    "ResidualPrompt",
    "RaggedPromptBank",
    "StructuredPrompt",
    "dept_input_length",
    "expand_to_batch",
    "initializers",
    "masked_mean",
    "num_positive",
    "phm_kernel",
]
