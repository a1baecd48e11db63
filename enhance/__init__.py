"""vidpost.enhance"""
