"""Entity schemas, Automerge documents and projections: pure code shared by server and client."""
