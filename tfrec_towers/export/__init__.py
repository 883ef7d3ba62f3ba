"""Export: versioned SavedModels (user tower + item index), the index types, signatures and op reports."""
