//! A unified diff of two texts, line by line (longest common subsequence), with three lines
//! of context, as `diff -u` prints it. Task definitions are a few hundred lines at most.

const CONTEXT: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Edit {
    Same(usize, usize),
    Delete(usize),
    Insert(usize),
}

/// The hunks of a unified diff from `old` to `new` under the `---`/`+++` headers; empty when
/// the texts are equal.
pub fn unified(old: &str, new: &str, old_name: &str, new_name: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let edits = edits(&a, &b);
    if edits.iter().all(|e| matches!(e, Edit::Same(..))) {
        return String::new();
    }
    let mut out = format!("--- {old_name}\n+++ {new_name}\n");
    let changed: Vec<usize> =
        edits.iter().enumerate().filter(|(_, e)| !matches!(e, Edit::Same(..))).map(|(i, _)| i).collect();
    // Group changes whose context overlaps into one hunk.
    let mut groups: Vec<(usize, usize)> = Vec::new();
    for &i in &changed {
        match groups.last_mut() {
            Some((_, end)) if i <= *end + 2 * CONTEXT + 1 => *end = i,
            _ => groups.push((i, i)),
        }
    }
    for (first, last) in groups {
        let from = first.saturating_sub(CONTEXT);
        let to = (last + CONTEXT + 1).min(edits.len());
        let hunk = &edits[from..to];
        // Line numbers (1-based) where the hunk starts in each text.
        let (mut old_at, mut new_at) = (0, 0);
        for e in &edits[..from] {
            match e {
                Edit::Same(..) => {
                    old_at += 1;
                    new_at += 1;
                }
                Edit::Delete(_) => old_at += 1,
                Edit::Insert(_) => new_at += 1,
            }
        }
        let old_len = hunk.iter().filter(|e| !matches!(e, Edit::Insert(_))).count();
        let new_len = hunk.iter().filter(|e| !matches!(e, Edit::Delete(_))).count();
        let start = |at: usize, len: usize| if len == 0 { at } else { at + 1 };
        out.push_str(&format!(
            "@@ -{},{old_len} +{},{new_len} @@\n",
            start(old_at, old_len),
            start(new_at, new_len)
        ));
        for e in hunk {
            match *e {
                Edit::Same(i, _) => out.push_str(&format!(" {}\n", a[i])),
                Edit::Delete(i) => out.push_str(&format!("-{}\n", a[i])),
                Edit::Insert(j) => out.push_str(&format!("+{}\n", b[j])),
            }
        }
    }
    out
}

/// The edit script from `a` to `b` by a longest common subsequence table.
fn edits(a: &[&str], b: &[&str]) -> Vec<Edit> {
    let (n, m) = (a.len(), b.len());
    // lcs[i][j]: the LCS length of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::with_capacity(n + m));
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push(Edit::Same(i, j));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push(Edit::Insert(j));
            j += 1;
        } else {
            out.push(Edit::Delete(i));
            i += 1;
        }
    }
    // Deletions before insertions within a run of changes, as diff -u prints them.
    let mut k = 0;
    while k < out.len() {
        let end = out[k..].iter().position(|e| matches!(e, Edit::Same(..))).map_or(out.len(), |p| k + p);
        out[k..end].sort_by_key(|e| matches!(e, Edit::Insert(_)));
        k = end + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::unified;

    #[test]
    fn equal_texts_have_no_diff_and_a_change_shows_with_context() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n";
        assert_eq!(unified(old, old, "x", "y"), "");
        let new = "a\nb\nc\nd\nE\nf\ng\nh\ni\nj\nk\n";
        assert_eq!(
            unified(old, new, "old", "new"),
            "--- old\n+++ new\n@@ -2,9 +2,10 @@\n b\n c\n d\n-e\n+E\n f\n g\n h\n i\n j\n+k\n"
        );
        // Far-apart changes are two hunks.
        let old: String = (0..20).map(|i| format!("{i}\n")).collect();
        let new = old.replace("2\n", "two\n").replace("17\n", "seventeen\n");
        let diff = unified(&old, &new, "o", "n");
        assert_eq!(diff.matches("@@ -").count(), 2, "{diff}");
        assert!(diff.contains("@@ -1,6 +1,6 @@\n 0\n 1\n-2\n+two\n 3\n"), "{diff}");
        // Everything new.
        assert_eq!(unified("", "a\n", "o", "n"), "--- o\n+++ n\n@@ -0,0 +1,1 @@\n+a\n");
    }
}
