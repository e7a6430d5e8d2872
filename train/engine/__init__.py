"""The DeepSpeed training loop shared by pretraining and SFT: ``trainer`` (the loop, in named steps), ``launch``
(dry run or process group + trainer, exit codes), ``checkpoint``, ``optim`` and ``schedule``, ``data_sources``
(the mixture check) and ``flops`` (MFU accounting).

Layer: imports ``train.runtime`` and ``train.config``; never the evaluation suite or DPO.
"""
