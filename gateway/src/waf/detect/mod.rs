//! Attack detection on one request's decoded fields (work in progress).
