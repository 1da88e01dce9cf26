#pragma once
// Crash-safe output: write to a temporary name next to the target, fsync, then rename into place, so a reader never
// sees a half-written file or directory. Every writer in Moebius goes through these helpers.
#include <filesystem>
#include <string>
#include <string_view>

namespace moebius {

// Usage: AtomicFile f(final); write to f.temp_path(); f.commit();  If commit() is never reached (exception), the
// destructor removes the temporary.
class AtomicFile {
  public:
    explicit AtomicFile(std::filesystem::path final_path);
    ~AtomicFile();
    AtomicFile(const AtomicFile&)            = delete;
    AtomicFile& operator=(const AtomicFile&) = delete;

    // "<dir>/.<name>.tmp-<pid>-<n>" in the same directory as the final path (rename must not cross filesystems).
    const std::filesystem::path& temp_path() const { return temp_; }
    const std::filesystem::path& final_path() const { return final_; }
    // fsyncs the temp file, renames it over the final path, fsyncs the directory. Throws Error on failure.
    void commit();
    bool committed() const { return committed_; }

  private:
    std::filesystem::path final_, temp_;
    bool                  committed_ = false;
};

// Writes bytes to path atomically.
void write_file_atomic(const std::filesystem::path& path, std::string_view bytes);

// fsync a file or a directory by path (best effort for directories on filesystems that refuse it).
void fsync_path(const std::filesystem::path& path);

// Whole-directory variant: files are written into "<out>.tmp-<pid>" and the directory is renamed into place on
// commit(). The constructor refuses (InputError) an existing non-empty <out> unless force; with force the old
// directory is replaced only at commit. The destructor removes the temp directory if not committed.
class AtomicDir {
  public:
    explicit AtomicDir(std::filesystem::path out, bool force = false);
    ~AtomicDir();
    AtomicDir(const AtomicDir&)            = delete;
    AtomicDir& operator=(const AtomicDir&) = delete;

    const std::filesystem::path& temp_path() const { return temp_; }
    const std::filesystem::path& final_path() const { return final_; }
    void                         commit();
    bool                         committed() const { return committed_; }

  private:
    std::filesystem::path final_, temp_;
    bool                  force_     = false;
    bool                  committed_ = false;
};

} // namespace moebius
