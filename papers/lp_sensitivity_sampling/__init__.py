"""ℓp sensitivity sampling bounds."""
