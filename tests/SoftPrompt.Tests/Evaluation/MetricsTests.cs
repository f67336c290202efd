using SoftPrompt.Scoring;

namespace SoftPrompt.Tests.Evaluation;

public class MetricsTests
{
    static readonly string[] Labels = { "a", "b", "c" };

    [Fact]
    public void AccuracyMacroF1AndConfusion_WithAClassNeverPredicted()
    {
        // gold:  a a a b b c
        // pred:  a a b b a a   (c is never predicted)
        var m = ClassificationMetrics.Compute(new[] { 0, 0, 0, 1, 1, 2 }, new[] { 0, 0, 1, 1, 0, 0 }, Labels);
        Assert.Equal(3.0 / 6, m.Accuracy, 12);
        Assert.Equal(new[] { 2, 1, 0 }, m.Confusion[0]);
        Assert.Equal(new[] { 1, 1, 0 }, m.Confusion[1]);
        Assert.Equal(new[] { 1, 0, 0 }, m.Confusion[2]);
        // a: P = 2/4, R = 2/3, F1 = 4/7; b: P = 1/2, R = 1/2, F1 = 1/2; c: never predicted → P = R = F1 = 0.
        Assert.Equal(0.5, m.PerClass[0].Precision, 12);
        Assert.Equal(2.0 / 3, m.PerClass[0].Recall, 12);
        Assert.Equal(4.0 / 7, m.PerClass[0].F1, 12);
        Assert.Equal(0.5, m.PerClass[1].F1, 12);
        Assert.Equal(0, m.PerClass[2].F1);
        Assert.Equal(1, m.PerClass[2].Support);
        Assert.Equal((4.0 / 7 + 0.5 + 0) / 3, m.MacroF1, 12);
        Assert.Equal(3.0 / 6, ClassificationMetrics.MajorityClassAccuracy(new[] { 0, 0, 0, 1, 1, 2 }), 12);
    }

    [Fact]
    public void PerfectPredictionsGiveOnes()
    {
        var m = ClassificationMetrics.Compute(new[] { 0, 1, 2, 1 }, new[] { 0, 1, 2, 1 }, Labels);
        Assert.Equal(1, m.Accuracy);
        Assert.Equal(1, m.MacroF1, 12);
    }

    static readonly string[] All = { "lowercase", "punctuation", "articles", "whitespace" };

    [Theory]
    [InlineData("The Cat!", "cat", true)]
    [InlineData("  an   apple. ", "Apple", true)]
    [InlineData("cats", "cat", false)]
    [InlineData("the theory", "theory", true)]   // "the" is removed as a word, not inside "theory"
    public void ExactMatchNormalises(string prediction, string gold, bool match) =>
        Assert.Equal(match, AnswerMetrics.ExactMatch(prediction, gold, All));

    [Fact]
    public void NormalisationStepsAreConfigurable()
    {
        Assert.False(AnswerMetrics.ExactMatch("The Cat", "cat", new[] { "lowercase" }));
        Assert.True(AnswerMetrics.ExactMatch("The Cat", "cat", new[] { "lowercase", "articles" }));
        Assert.False(AnswerMetrics.ExactMatch("Cat", "cat", Array.Empty<string>()));
        Assert.Equal("a b", AnswerMetrics.Normalize(" a   b ", new[] { "whitespace" }));
    }

    [Fact]
    public void TokenF1CountsSharedTokensOnce()
    {
        // pred tokens: big red dog ; gold: red dog dog → common = {red, dog} = 2; P = 2/3, R = 2/3.
        Assert.Equal(2.0 / 3, AnswerMetrics.TokenF1("big red dog", "red dog dog", All), 12);
        Assert.Equal(1, AnswerMetrics.TokenF1("The dog.", "dog", All), 12);
        Assert.Equal(0, AnswerMetrics.TokenF1("cat", "dog", All));
        Assert.Equal(1, AnswerMetrics.TokenF1("the", "", All)); // both empty after normalisation
    }

    [Fact]
    public void AnyOfSeveralGoldAnswers()
    {
        var golds = AnswerMetrics.SplitAnswers("cold | cool|", "|");
        Assert.Equal(new[] { "cold", "cool" }, golds);
        Assert.True(AnswerMetrics.AnyExactMatch("Cool.", golds, All));
        Assert.False(AnswerMetrics.AnyExactMatch("warm", golds, All));
        Assert.Equal(1, AnswerMetrics.BestTokenF1("cool", golds, All), 12);
        Assert.Equal(new[] { "a|b" }, AnswerMetrics.SplitAnswers("a|b", null));
    }

    [Fact]
    public void AutoTaskRule()
    {
        Assert.True(ClassificationTask.Detect(new[] { "great", "other", "great" }).IsClassification);
        Assert.False(ClassificationTask.Detect(Enumerable.Range(0, 30).Select(i => $"l{i % 21}").ToList()).IsClassification); // 21 labels
        Assert.False(ClassificationTask.Detect(new[] { "a b c d e", "x", "x" }).IsClassification);                           // a long output
        Assert.False(ClassificationTask.Detect(new[] { "warm", "hot", "cold" }).IsClassification);                           // nothing repeats
    }
}
