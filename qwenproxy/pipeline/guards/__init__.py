"""What the pipeline checks on the way: loops in an answer, secrets in a prompt, and whether a
prompt fits the model's context window (counted with Qwen's tokenizer)."""
