"""A fault for a test job's workers (Ray's ``worker_process_setup_hook``): llama.cpp dies by SIGSEGV as
soon as it is asked to generate, inside the real ``GenerateAnswers`` actor, as its AMX kernel once did
on this machine's CPU. The production code runs unchanged around it."""

from __future__ import annotations

import os
import signal


def install() -> None:
    import llama_cpp

    def die(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGSEGV)

    llama_cpp.Llama.create_chat_completion = die
