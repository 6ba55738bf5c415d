"""In-chat commands (`!/set(model=...)`, `!/oneoff(...)`, failover routes): how they are
written, and the processor that finds, strips and runs them against a session."""
