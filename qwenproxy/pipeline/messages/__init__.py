"""What a chat request's messages hold: the text of a message's content, Qwen's one leading
system message, and prompt-cache markers."""
