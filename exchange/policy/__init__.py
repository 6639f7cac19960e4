"""Who may do what: caller authentication, strict payloads, the disclosure, subject assertions,
roles, the sharing decision, grants, rates and the operator's key."""
