"""(kernel not written yet)"""
