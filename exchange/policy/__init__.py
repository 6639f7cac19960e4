"""Who may do what: caller authentication, roles, sharing classes, grants, purposes, rates."""
